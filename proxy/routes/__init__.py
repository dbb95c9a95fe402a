"""The HTTP routes, one module per surface; each acts on the state it is handed."""
