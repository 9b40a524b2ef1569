"""Operations on a sweep that exists: ``sweep check`` (reconcile and repair) and ``sweep status``."""
