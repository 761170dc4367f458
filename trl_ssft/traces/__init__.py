"""Building SSFT trace sets: convert public datasets, generate from teachers, verify, select, report."""
