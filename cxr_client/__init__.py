"""`cxr-effusion`: the command-line client. httpx and tqdm only; the service's core is imported for `--local` alone."""
