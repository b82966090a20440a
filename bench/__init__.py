"""Side-by-side benchmarks: PostgreSQL directly, pgtenant and PgBouncer (``python -m bench``).

See bench/README.md for the workloads, how to run them and how to read the results.
"""
