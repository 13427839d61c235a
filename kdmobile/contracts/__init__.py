"""Typed contracts between the stages: the run directory's held-out set and student card (`heldout`, `student`;
the run reader is `kdmobile.rundir`), the bundle manifest (`manifest`, with the JSON Schema the Android demo ships)
and the bench report row (`report`). Each has one reader; no other module spells their keys."""
