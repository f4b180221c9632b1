"""Publication figures of every result: matplotlib `Figure`s drawn with the object API (no pyplot state, so any
backend, Agg included, renders them), one module per family of results. The results' `.plot()` methods call
these; matplotlib is the optional extra `layerscope[plot]` and is imported only when a figure is drawn.

Each figure carries its provenance (model, prompt or prompt set, method, interventions) in its title and a caption
line, and shows tokens as the explorer's grid does (`layerscope.display.token_label`)."""
