"""Which compliance controls each section of an evidence pack evidences, and why: the one place
the mapping lives (report.html, controls.csv and manifest.json are rendered from it)."""

from __future__ import annotations

# The controls, with the framework's own wording in short.
CONTROLS: dict[str, tuple[str, str]] = {
    "SOC 2 CC6.1": ("SOC 2", "Logical access security: software, infrastructure and "
                             "architecture restrict access to information assets."),
    "SOC 2 CC6.2": ("SOC 2", "New access is registered and authorised before it is issued; "
                             "access is removed when no longer needed."),
    "SOC 2 CC6.3": ("SOC 2", "Access is authorised, changed and removed based on roles, least "
                             "privilege and segregation of duties."),
    "SOC 2 CC7.2": ("SOC 2", "System components are monitored for anomalies indicative of "
                             "malicious acts or errors; anomalies are analysed."),
    "HIPAA §164.312(b)": ("HIPAA", "Audit controls: mechanisms that record and examine "
                                   "activity in systems that contain or use ePHI."),
    "PCI-DSS Req. 7": ("PCI-DSS", "Restrict access to system components and cardholder data "
                                  "by business need to know."),
    "PCI-DSS Req. 10": ("PCI-DSS", "Log and monitor all access to system components and "
                                   "cardholder data."),
    "GDPR Art. 30": ("GDPR", "Records of processing activities."),
    "GDPR Art. 32": ("GDPR", "Security of processing, including a process for regularly "
                             "testing and evaluating the effectiveness of the measures."),
}

# Section key → {control: one line on how the section evidences it}.
MAPPING: dict[str, dict[str, str]] = {
    "grants": {
        "SOC 2 CC6.1": "Every access an agent received in the period, to which tool scope, "
                       "until when.",
        "SOC 2 CC6.2": "Each grant is joined to its request and approvals; approved_before_access "
                       "shows the last approval preceded the grant.",
        "SOC 2 CC6.3": "Grants are time-bound (expires_at) and their revocation or expiry is "
                       "recorded.",
        "PCI-DSS Req. 7": "Access is per scope and backed by a written justification and a "
                          "named approver.",
    },
    "separation_of_duties": {
        "SOC 2 CC6.3": "Recomputed from the stored decisions: no requester or agent owner "
                       "approved their own access, no approver counted twice.",
        "SOC 2 CC6.2": "Every approved item had the approvals its policy required, stage by "
                       "stage.",
        "PCI-DSS Req. 7": "Need-to-know access was confirmed by someone other than the person "
                          "who needed it.",
        "GDPR Art. 32": "A regular test of an access-control measure, with pass/fail per item.",
    },
    "break_glass": {
        "SOC 2 CC6.2": "Every emergency access without prior approval, with who took it and "
                       "the written justification.",
        "SOC 2 CC7.2": "Break-glass use is an anomaly that was flagged, alerted and is listed "
                       "for review.",
        "PCI-DSS Req. 10": "Emergency access to systems is logged with the person and the time.",
        "HIPAA §164.312(b)": "Emergency-access procedure use is recorded and examinable.",
    },
    "access_requests": {
        "SOC 2 CC6.2": "Each request with its justification, decisions, deadline and outcome, "
                       "and each held tool call (escalation) with its human decision.",
        "SOC 2 CC6.1": "Runtime escalations show sensitive calls were held until a person "
                       "allowed them.",
        "PCI-DSS Req. 7": "Denied and expired requests show access is refused without an "
                          "approved need.",
        "GDPR Art. 30": "Who asked for which processing capability, why, and for how long.",
    },
    "bundles": {
        "SOC 2 CC6.1": "Every policy revision gateways enforced, with its SHA-256 and signing "
                       "key: what access rules were in force when.",
        "GDPR Art. 32": "Signed, versioned policy distribution: integrity of the access-control "
                        "configuration.",
        "SOC 2 CC7.2": "Revision history lets a reviewer date every change of the enforced "
                       "policy.",
    },
    "signing_keys": {
        "SOC 2 CC6.1": "The keys that authenticate policy bundles, their states and rotation "
                       "dates.",
        "GDPR Art. 32": "Cryptographic key management: rotation and revocation events.",
        "PCI-DSS Req. 10": "Key lifecycle changes are audited with the actor and the time.",
    },
    "audit_chain": {
        "HIPAA §164.312(b)": "The audit trail was verified end to end when the pack was made.",
        "PCI-DSS Req. 10": "Audit logs are protected against modification: the hash chain "
                           "detects edited, deleted or reordered events.",
        "SOC 2 CC7.2": "A broken chain is an anomaly reported here (and alerted).",
        "GDPR Art. 32": "Integrity of processing records, tested at generation time.",
    },
    "audit_events": {
        "HIPAA §164.312(b)": "Every recorded action of the period: actor, action, object, "
                             "before/after, request id, IP, time.",
        "PCI-DSS Req. 10": "The complete log of access-control changes and administrative "
                           "actions for the period.",
        "SOC 2 CC7.2": "The raw events monitoring and investigations work from.",
        "GDPR Art. 30": "Records of the processing-relevant changes, with their time and actor.",
    },
}


def controls_for(section: str) -> list[dict[str, str]]:
    """The section's controls in catalogue order, with the framework and the explanation."""
    mapped = MAPPING[section]
    return [{"control": control, "framework": CONTROLS[control][0],
             "title": CONTROLS[control][1], "explanation": mapped[control]}
            for control in CONTROLS if control in mapped]


def sections_for(control: str) -> list[str]:
    """The sections that evidence ``control``, in section order."""
    return [section for section, mapped in MAPPING.items() if control in mapped]
