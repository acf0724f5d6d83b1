"""What people look at: figures, the HTML gallery of rendered samples, and the progress of
long jobs (the CLI's display, Prefect progress artifacts). Prefect is imported only inside
functions here, and only when a Prefect run is in progress."""
