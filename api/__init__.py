"""The HTTP layer that jobs and events share: the NinjaAPI at /api/, token auth, error schemas.

Each capability keeps its routes beside its code (`jobs/interfaces/http.py`, `subscribers/http.py`); this
package holds only what they share, so neither reaches into the other.
"""
