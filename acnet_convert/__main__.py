from acnet_convert.cli import main

main()
