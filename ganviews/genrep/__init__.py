"""GenRep: generative models as a data source for multiview representation learning."""
