"""Ready-made nodes: traffic simulator, recording player, trajectory predictor, evaluator, recorder,
Foxglove bridge and printer, plus the predictor's parts (`resample`, `state_table`, `state_file`,
`timing`). Nodes import `pipeline` and the torch-free model contract `export.runtime`, never
`models`, `export.torch_export` or torch (pyproject.toml's import contracts check it).
"""
