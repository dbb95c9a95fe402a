"""Development tools that stand in for the world: a simulated teacher, the demo, data.

Nothing here is on the serving path: `tracer serve` never imports it. `tracer demo`
and `tracer sim-teacher` do, and so do the tests and the benchmarks.
"""
