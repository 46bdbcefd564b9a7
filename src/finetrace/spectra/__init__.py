"""What the weights say without a forward pass: each matrix's change, its rank, and the
intruder dimensions a fine-tune put into it."""
