"""Pictures of the design space (matplotlib, Agg backend).

- ``edmlab.viz.flows``: the tutorial's (t, x) plane of a 1-D bimodal mixture — densities p(x; σ(t)), exact flow
  curves, Euler/Heun steps — and the same ODE warped by the vp, ve and linear schedules.
  Command: ``python -m edmlab.cli.flows --out DIR``.
"""
