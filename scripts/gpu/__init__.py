"""Scripts for the lent GPU machine (see docs/gpu.md) and the GPU layouts of deploy/layouts/."""
