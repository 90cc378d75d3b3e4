"""The bundled small models (``*-tiny.pt``), installed as package data ``segsearch.checkpoints`` so
a wheel carries them; read with ``importlib.resources``. Downloaded real weights never go here in
an installed package (see ``segsearch.settings``)."""
