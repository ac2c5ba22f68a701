"""How many /predict requests may be in progress at once, from the memory the container may use.

A request in progress holds its upload, up to `CXR_MAX_UPLOAD_BYTES` and briefly twice that
(the chunks as they arrive, then the joined body); each decoder holds a working array of up
to `CXR_MAX_PIXELS` pixels, twice in float64 for a DICOM with a rescale and a window. The old
fixed bound (max_queue + 2 x max_batch = 80 uploads of 32 MiB, about 2.5 GiB) was above the
2 GiB the pod is given, and an OOM kill loses every request in flight. So, where the
container has a memory limit (cgroup, or `CXR_MEMORY_LIMIT_BYTES`):

    budget = HEADROOM x limit - RESERVE
    uploads = (budget - decoders x max_pixels x 16) // (2 x max_upload_bytes)

clamped to [1, max_queue + 2 x max_batch]. Only `decoders` uploads decode at once; where the
budget cannot hold that many, each upload in progress is counted as decoding:
budget // (2 x max_upload_bytes + max_pixels x 16). `CXR_MAX_IN_FLIGHT` overrides it. The arithmetic
for the shipped deployment is in docs/security.md and deploy/k8s/base/deployment.yaml.
"""

from __future__ import annotations

from service.resources import available_cpus, cgroup_memory_limit
from service.settings import Settings

HEADROOM = 0.85  # allocator fragmentation, thread stacks, the kernel's page cache for the container
RESERVE_BYTES = 512 * 1024 * 1024  # the process at rest: Python, ONNX Runtime, the model, warm-up buffers
DECODE_BYTES_PER_PIXEL = 16  # two float64 arrays: after the modality LUT and after the VOI LUT


def admission_limit(settings: Settings) -> int:
    """`CXR_MAX_IN_FLIGHT`, else the fixed bound lowered to what the memory limit affords."""
    if settings.max_in_flight:
        return settings.max_in_flight
    fixed = settings.max_queue + 2 * settings.max_batch
    limit = settings.memory_limit_bytes or cgroup_memory_limit()
    if limit is None:
        return fixed
    decoders = settings.decode_processes or settings.decode_threads or available_cpus()
    budget = HEADROOM * limit - RESERVE_BYTES
    per_upload, per_decode = 2 * settings.max_upload_bytes, settings.max_pixels * DECODE_BYTES_PER_PIXEL
    uploads = int(budget // (per_upload + per_decode))  # as if every upload in progress were decoding
    if uploads >= decoders:  # only `decoders` of them decode at once
        uploads = int((budget - decoders * per_decode) // per_upload)
    return max(1, min(fixed, uploads))
