"""The source clips: finding them, decoding and cutting them into log-mel rows, the pools
that do that work, and the synthetic demo clips. No Prefect or MLflow here: worker
processes and Dask workers import these modules alone."""
