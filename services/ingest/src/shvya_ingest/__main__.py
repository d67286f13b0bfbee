from shvya_ingest.app import main

main()
