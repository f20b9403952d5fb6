"""The chapter-6 model representation: model structure, computation graphs, operator and
variable nodes (Tables 1-3), the operator registry (Tables 4-56) and a numpy reference executor."""
