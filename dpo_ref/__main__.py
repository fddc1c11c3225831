from dpo_ref.cli import console

console()
