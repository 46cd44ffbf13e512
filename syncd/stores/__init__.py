"""The stores syncd reads and writes, one room each: capture, reading, writing, fencing."""
