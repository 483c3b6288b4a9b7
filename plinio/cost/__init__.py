"""Layer-agnostic cost helpers, shared by the methods' cost models (each method keeps its own
model, e.g. ``plinio.methods.pit.cost_model``)."""
