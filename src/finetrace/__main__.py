from finetrace.cli import main

main()
