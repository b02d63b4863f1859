"""Export a job's or a query's images as training shards (WebDataset tar, HDF5, ZIP) with metadata and a split."""
