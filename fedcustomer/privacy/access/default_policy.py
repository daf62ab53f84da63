"""The default access policy shipped with fedcustomer: a casbin model and a policy CSV.

Kept as Python text (not data files) so it travels in every packaging of the app,
Flower app bundles included. ``fedcustomer.privacy.access.policy.write_default_policy``
writes the CSV into a partner home, where the partner admin edits it.
"""

MODEL_CONF = """# Casbin model for a partner's customer-field access.
#
# r / p  : may <role> see fields of <tier> whose schema role is <field_role>, for <purpose>, as <view>?
#          view is one of: clear, masked, clear_with_approvals (clear only with two distinct approvals).
# r2 / p2: may <role> perform the non-data <action> (ingest, keys, erase, policy_edit, people, audit_read, approve, read)?
# g      : role inheritance, "g, child_role, parent_role" gives child_role every grant of parent_role.
# Anything not granted is denied.

[request_definition]
r = sub, pur, tier, frole, view
r2 = sub, act

[policy_definition]
p = sub, pur, tier, frole, view
p2 = sub, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))
e2 = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub) && (p.pur == "*" || r.pur == p.pur) && (p.tier == "*" || r.tier == p.tier) && (p.frole == "*" || r.frole == p.frole) && r.view == p.view
m2 = g(r2.sub, p2.sub) && r2.act == p2.act
"""

POLICY_CSV = """# Default access policy of a partner node. The partner admin may edit this file (action policy_edit).
# Anything not granted here is denied. '*' matches any purpose, tier or field role.
#
# Field access:  p, role, purpose, tier, field_role, view
#   purpose    training | evaluation | analytics | marketing | risk_review | audit | administration | *
#   tier       core | sensitive | public | *
#   field_role id | feature | label | timestamp | *
#   view       clear | masked | clear_with_approvals
# Actions:       p2, role, action
#   action     ingest | keys | erase | policy_edit | audit_read | approve | read
# Inheritance:   g, child_role, parent_role

# Data scientists: public and general-sensitive fields in clear for training and analytics; never core.
p, data_scientist, training, public, *, clear
p, data_scientist, training, sensitive, *, clear
p, data_scientist, analytics, public, *, clear
p, data_scientist, analytics, sensitive, *, clear

# Marketing analysts: public in clear, sensitive desensitised, never core.
p, marketing_analyst, marketing, public, *, clear
p, marketing_analyst, marketing, sensitive, *, masked
p, marketing_analyst, analytics, public, *, clear
p, marketing_analyst, analytics, sensitive, *, masked

# Risk officers: core fields only with two distinct approvals that have not expired.
p, risk_officer, risk_review, public, *, clear
p, risk_officer, risk_review, sensitive, *, clear
p, risk_officer, risk_review, core, *, clear_with_approvals

# Partner admin: administers the node; sees public in clear and sensitive masked, never core.
p, partner_admin, administration, public, *, clear
p, partner_admin, administration, sensitive, *, masked

# Training pipeline: only features and labels, never identifiers, timestamps or core fields.
p, training_pipeline, training, public, feature, clear
p, training_pipeline, training, public, label, clear
p, training_pipeline, training, sensitive, feature, clear
p, training_pipeline, training, sensitive, label, clear

# Evaluation: the same fields, read to score a job's model on the held-out customers; audited
# under its own purpose, so a compliance officer can tell evaluation reads from training reads.
p, training_pipeline, evaluation, public, feature, clear
p, training_pipeline, evaluation, public, label, clear
p, training_pipeline, evaluation, sensitive, feature, clear
p, training_pipeline, evaluation, sensitive, label, clear

# Record linkage (private set intersection): the node blinds each customer id before
# anything leaves, so its pipeline reads the id field, and only the id field, in clear.
p, training_pipeline, record_linkage, core, id, clear

# Non-data actions.
p2, partner_admin, ingest
p2, partner_admin, keys
p2, partner_admin, erase
p2, partner_admin, policy_edit
p2, partner_admin, people
p2, partner_admin, approve
p2, compliance_officer, audit_read
p2, compliance_officer, approve

# Who reads customer data at all (field decisions above still apply).
p2, data_scientist, read
p2, marketing_analyst, read
p2, risk_officer, read
p2, partner_admin, read
p2, training_pipeline, read
"""
