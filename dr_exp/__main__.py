from dr_exp.cli import main

main()
