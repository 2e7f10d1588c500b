"""The dispatch board: a day's work per technician, live, with moves that are ops."""
