"""Components and pure helpers of the gitops-bootstrap program."""
