"""L0: values and plumbing, no network."""
