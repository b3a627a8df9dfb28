"""Transfer from auxiliary data: how (coupling), what (groups) and when (schedules)."""
