"""NIR target: write, read and interpret NIR graphs carrying PMSM neurons."""
