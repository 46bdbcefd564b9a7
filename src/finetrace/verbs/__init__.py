"""The commands, one module each: each resolves its inputs, runs the stage libraries, writes its
record and page, and returns the record. The command line and the Python API both call them."""
