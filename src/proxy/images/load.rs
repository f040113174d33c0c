//! `POST /images/load` (`docker load`): the names an archive gives its images come from inside
//! it (`manifest.json` `RepoTags`, the legacy `repositories` file, OCI `index.json`
//! annotations), not from the request. The upload goes through to dockerd byte for byte while
//! its tar headers are read; the name files are read as they pass, and a name outside the
//! caller's prefix aborts the upload. dockerd (and containerd's importer) unpack the whole
//! archive before they read those files and name anything, so an aborted upload loads
//! nothing. A gzip upload is decompressed on the way (dockerd takes a plain tar just as well);
//! other compressions are refused with a sentence.

use std::io::{self, Read, Write};

use serde_json::Value;

use super::names;
use crate::proxy::archive::{compression, read_up_to};
use crate::proxy::body::Body;
use crate::proxy::stream::{self, Failure};

/// The most a name file may hold; real ones are a few KiB.
const MAX_NAME_FILE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("docker load: the archive names an image {0:?}, outside your prefix ({1}); retag it under your prefix before saving, or ask the administrator to load it")]
    Name(String, String),
    #[error("docker load: {0} in the archive is not valid JSON: {1}")]
    BadNameFile(String, String),
    #[error("docker load: {0} in the archive is larger than {MAX_NAME_FILE} bytes")]
    NameFileTooLarge(String),
    #[error("docker load: the archive is {0}-compressed; decompress it first (gzip is taken)")]
    Compressed(&'static str),
    #[error("docker load: the archive is not a valid tar: {0}")]
    Malformed(String),
}

pub type Refusal = stream::Refusal<LoadError>;

/// The upload, passed through while its names are checked against `prefixes`.
pub fn inspect_load(body: Body, prefixes: Vec<String>) -> (Body, Refusal) {
    stream::transform(body, move |r, w| inspect(r, w, &prefixes))
}

/// Copies the archive `input` to `output` unchanged (decompressed when gzip), refusing it
/// when a name file names an image outside `prefixes`.
pub fn inspect(
    input: &mut dyn Read,
    output: &mut dyn Write,
    prefixes: &[String],
) -> Result<(), Failure<LoadError>> {
    let mut head = [0u8; 6];
    let n = read_up_to(input, &mut head).map_err(Failure::Input)?;
    let head = &head[..n];
    let raw: Box<dyn Read + '_> = Box::new(Read::chain(head, input));
    let source: Box<dyn Read + '_> = match compression(head) {
        None => raw,
        Some("gzip") => Box::new(flate2::read::GzDecoder::new(raw)),
        Some(other) => return Err(Failure::Refused(LoadError::Compressed(other))),
    };
    let mut tee = Tee {
        inner: source,
        out: output,
        failed: None,
    };
    let result = check_entries(&mut tee, prefixes);
    if let Some(e) = tee.failed.take() {
        return Err(Failure::Output(e));
    }
    result?;
    // Whatever follows the end marker (padding) goes through too.
    io::copy(&mut tee, &mut io::sink()).map_err(Failure::Input)?;
    if let Some(e) = tee.failed.take() {
        return Err(Failure::Output(e));
    }
    Ok(())
}

fn check_entries(tee: &mut Tee<'_>, prefixes: &[String]) -> Result<(), Failure<LoadError>> {
    let mut archive = tar::Archive::new(tee);
    let entries = archive
        .entries()
        .map_err(|e| Failure::Refused(LoadError::Malformed(e.to_string())))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Failure::Refused(LoadError::Malformed(e.to_string())))?;
        let path = entry
            .path()
            .map(|p| p.to_string_lossy().trim_start_matches("./").to_string())
            .unwrap_or_default();
        if !matches!(
            path.as_str(),
            "manifest.json" | "repositories" | "index.json"
        ) {
            continue;
        }
        if entry.size() > MAX_NAME_FILE {
            return Err(Failure::Refused(LoadError::NameFileTooLarge(path)));
        }
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::Refused(LoadError::Malformed(e.to_string())))?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Refused(LoadError::BadNameFile(path.clone(), e.to_string())))?;
        for name in names_in(&path, &v) {
            if !names::is_under(&name, prefixes) {
                return Err(Failure::Refused(LoadError::Name(
                    name,
                    prefixes.join(" or "),
                )));
            }
        }
    }
    Ok(())
}

/// The image names a name file gives.
pub fn names_in(file: &str, v: &Value) -> Vec<String> {
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    };
    match file {
        // [{"Config": …, "RepoTags": ["alice/x:1"], "Layers": […]}]
        "manifest.json" => v
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|m| strings(m.get("RepoTags")))
            .collect(),
        // {"alice/x": {"1": "<id>"}}
        "repositories" => v
            .as_object()
            .into_iter()
            .flat_map(|o| o.iter())
            .flat_map(|(repo, tags)| {
                tags.as_object()
                    .into_iter()
                    .flat_map(|t| t.keys())
                    .map(move |tag| format!("{repo}:{tag}"))
            })
            .collect(),
        // OCI layout: a full name in io.containerd.image.name, or a full reference in
        // org.opencontainers.image.ref.name (which may also be a bare tag: no name then).
        "index.json" => v
            .get("manifests")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("annotations"))
            .filter_map(|a| {
                let full = a.get("io.containerd.image.name").and_then(Value::as_str);
                let refname = a
                    .get("org.opencontainers.image.ref.name")
                    .and_then(Value::as_str)
                    .filter(|r| r.contains(['/', ':', '@']));
                full.or(refname).map(str::to_string)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads through to the writer: everything the tar reader consumes reaches dockerd.
struct Tee<'a> {
    inner: Box<dyn Read + 'a>,
    out: &'a mut dyn Write,
    failed: Option<io::Error>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(e) = self.out.write_all(&buf[..n]) {
            let kind = e.kind();
            self.failed = Some(e);
            return Err(io::Error::new(kind, "docker stopped reading"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn run(input: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let p = names::prefixes("{user}/", "alice");
        match inspect(&mut &input[..], &mut out, &p) {
            Ok(()) => Ok(out),
            Err(Failure::Refused(e)) => Err(e.to_string()),
            Err(_) => Err("io".into()),
        }
    }

    fn save(tags: Value) -> Vec<u8> {
        let manifest = json!([{"Config": "c.json", "RepoTags": tags, "Layers": ["l/layer.tar"]}]);
        tar_of(&[
            ("l/layer.tar", vec![0u8; 3000]),
            ("c.json", b"{}".to_vec()),
            ("manifest.json", manifest.to_string().into_bytes()),
        ])
    }

    #[test]
    fn own_names_pass_byte_for_byte() {
        let t = save(json!(["alice/x:1", "localhost/alice/y:latest"]));
        assert_eq!(run(&t).unwrap(), t);
        let t = save(json!(null));
        assert_eq!(run(&t).unwrap(), t);
    }

    #[test]
    fn other_names_are_refused_from_every_name_file() {
        let e = run(&save(json!(["alice/x:1", "team/pytorch:latest"]))).unwrap_err();
        assert!(e.contains("\"team/pytorch:latest\""), "{e}");
        let legacy = tar_of(&[("repositories", br#"{"ubuntu":{"22.04":"abc"}}"#.to_vec())]);
        assert!(run(&legacy).unwrap_err().contains("ubuntu:22.04"));
        let oci = json!({"manifests": [{"annotations": {"io.containerd.image.name": "docker.io/bob/x:1",
            "org.opencontainers.image.ref.name": "1"}}]});
        let t = tar_of(&[("index.json", oci.to_string().into_bytes())]);
        assert!(run(&t).unwrap_err().contains("bob/x"));
        let oci = json!({"manifests": [{"annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
        let t = tar_of(&[("./index.json", oci.to_string().into_bytes())]);
        run(&t).unwrap();
    }

    #[test]
    fn gzip_is_decompressed_and_others_refused() {
        use flate2::write::GzEncoder;
        let t = save(json!(["alice/x:1"]));
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&t).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(run(&gz).unwrap(), t);
        let bad = save(json!(["ubuntu"]));
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bad).unwrap();
        assert!(run(&gz.finish().unwrap()).is_err());
        assert!(run(b"\x28\xb5\x2f\xfd rest").unwrap_err().contains("zstd"));
        assert!(run(&tar_of(&[("manifest.json", b"{".to_vec())]))
            .unwrap_err()
            .contains("not valid JSON"));
    }
}
