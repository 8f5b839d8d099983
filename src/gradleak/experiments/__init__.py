"""Experiments built from gradleak's pieces: the ROG privacy–utility trade-off (:mod:`.tradeoff`) and the
victim models it and the ROG benchmark use (:mod:`.victims`)."""
