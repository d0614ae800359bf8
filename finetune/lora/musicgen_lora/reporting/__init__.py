"""Reading runs and writing what people read: the runs table, the review gate, model cards,
training curves."""
