"""Upstream protocols, one package each (``openai``, ``local_typeset``, ...), behind one small
interface (:mod:`.base`), chosen and failed over by :mod:`.pool` with :mod:`.breaker`."""
