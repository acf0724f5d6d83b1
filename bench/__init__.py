"""Side-by-side benchmarks; each writes its markdown result to bench/results/."""
