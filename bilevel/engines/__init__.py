"""Third-party engines for the hypergradient: `higher` (unrolling) and Betty (darts, neumann, cg)."""
