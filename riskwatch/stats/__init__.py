"""Statistics over batches: the drift tests and the comparison rule training and the gate share."""
