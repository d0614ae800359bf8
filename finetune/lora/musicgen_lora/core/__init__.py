"""The ground floor: user errors and logging, writing files safely, run paths, threads, precision."""
