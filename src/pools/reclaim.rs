//! Idle and overlong holders of pool GPUs (see `labgpu reclaim`).
