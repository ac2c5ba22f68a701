"""What every result format says: the finding, the model that found it, and the codes both formats use.

The codes are standard terminologies, not ours: SNOMED CT for the finding and the present/absent
values (the same concepts DICOM's CID 230 "Yes-No" family and FHIR's value sets accept), UCUM for
"no unit". Only the probability's concept has no standard code, so it sits in a private coding
scheme (PS3.3 8.2: a designator starting with "99" is a local scheme).
"""

from __future__ import annotations

from dataclasses import dataclass

SNOMED = "SCT"  # DICOM's designator for SNOMED CT; FHIR writes the system as SNOMED_URL
SNOMED_URL = "http://snomed.info/sct"
PLEURAL_EFFUSION = ("60046008", "Pleural effusion")
PRESENT = ("52101004", "Present")
ABSENT = ("2667000", "Absent")
CHEST_RADIOGRAPH = ("399208008", "Plain chest X-ray")
PRIVATE_SCHEME = "99CXREFF"
PROBABILITY = ("effusion-probability", "Probability of pleural effusion")


@dataclass(frozen=True)
class ModelIdentity:
    """The model a result names: enough to find the exact file again (its sha256) and its decision rule."""

    name: str
    version: str
    sha256: str
    threshold: float


@dataclass(frozen=True)
class Finding:
    """One scan's result: the probability and whether the model's threshold calls the finding present
    (the HTTP layer sets it from the JSON answer's label, so every format agrees)."""

    probability: float
    present: bool

    def summary(self, model: ModelIdentity) -> str:
        """One line for a human reader; no patient data, only the result and its rule."""
        verdict = "present" if self.present else "absent"
        return (
            f"Pleural effusion {verdict}: probability {self.probability:.3f} "
            f"{'>=' if self.present else '<'} threshold {model.threshold:g} ({model.name} {model.version}). "
            "Research and integration use, not for clinical use."
        )
