from segsearch.cli import app

app(prog_name="segsearch")
