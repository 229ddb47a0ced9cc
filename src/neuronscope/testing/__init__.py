"""Small real models and data for tests, benchmarks and demos (no mocks: these are trained)."""
