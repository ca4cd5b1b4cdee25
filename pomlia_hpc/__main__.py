from pomlia_hpc.cli import main

main()
