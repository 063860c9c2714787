"""The finders behind :class:`~router.classify.personal_data.PatternDetector`, one module per family.

Each finder is a function from normalised text to spans:

* :mod:`.identifiers`: e-mail, payment card, IBAN, national ids, IP addresses;
* :mod:`.phones`: phone numbers, validated by ``phonenumbers``;
* :mod:`.secrets`: credentials;
* :mod:`.names`: person names, with the gazetteer of :mod:`.gazetteer`;
* :mod:`.addresses`: street addresses;
* :mod:`.encoded`: the same inside URL-encoded and base64 text.

:mod:`._engine` holds what they share: RE2 compilation, the pattern registry
and the digit normalisation.
"""
