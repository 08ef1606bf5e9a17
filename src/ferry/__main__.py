from ferry.cli import app

app()
