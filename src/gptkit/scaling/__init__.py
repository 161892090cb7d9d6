"""Predictable scaling (GPT-4 report §3; Kaplan et al. 2020; Hoffmann et al. 2022): `gptkit scale`.

Layers, bottom up: `plan` (the shape family, the optimiser rules, the ladder for a time budget), `speed` (a few
real training steps per shape), `runner` (each point a resumable `gptkit train` run), `fit` (the laws, scipy),
`forecast` (the compute-optimal run at a target and its predicted loss), `report` (tables, plots), `study` (the
command's flow and OUT's files). docs/scaling.md explains the rules and the fits.
"""
