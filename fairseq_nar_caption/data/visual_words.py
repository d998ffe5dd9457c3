"""Visual words (NACF, Eq. 6): nouns and verbs, by Penn Treebank tag.

Tags come from the manifest's ``pos`` column, which the data preparation fills
with the NLTK tagger (``text.pos_tag_captions``).  Coarse classes follow the NACF
reference (``pos_tag_mapping``): NN* → noun, VB* and MD → verb.  Forms of "be"
are tagged as verbs but carry no visual content; ``BE_FORMS`` lists them so the
criterion can leave them out (the reference does; on by default there too).
"""
OTHER, NOUN, VERB = 0, 1, 2
BE_FORMS = ("be", "is", "are", "was", "were", "been", "being", "am")


def coarse_pos(tag: str) -> int:
    if tag.startswith("NN"):
        return NOUN
    if tag.startswith("VB") or tag == "MD":
        return VERB
    return OTHER
