from avcurate.cli import main

main()
