from acnet_convert.worker.main import main

main()
