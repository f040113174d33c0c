//! Exec instances: `/exec/{id}/…` needs the caller to own the exec's container. What the exec
//! process may do is cut by the runtime (`runc exec --process`), like the container's own.

use hyper::{Request, Response};

use super::body::Body;
use super::error::ProxyError;
use super::server::Call;
use super::upstream::{exec_container, forward, owned_container};

pub async fn by_id(
    call: &Call<'_>,
    id: &str,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let container = exec_container(call.state, id).await?;
    owned_container(call.state, call.ctx, &container).await?;
    forward(call.state, req).await
}
