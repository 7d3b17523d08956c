"""View-learnable contrastive few-shot classification: CT-patch and digits episodes, ProtoNet, InfoNCE, learned views."""
